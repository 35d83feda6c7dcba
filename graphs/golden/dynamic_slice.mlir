module @dynamic_slice {
  func.func public @main(%arg0: tensor<5x4xf64>, %arg1: tensor<i32>, %arg2: tensor<i32>) -> (tensor<2x3xf64>) {
    %0 = "stablehlo.dynamic_slice"(%arg0, %arg1, %arg2) {slice_sizes = array<i64: 2, 3>} : (tensor<5x4xf64>, tensor<i32>, tensor<i32>) -> tensor<2x3xf64>
    "func.return"(%0) : (tensor<2x3xf64>) -> ()
  }
}
