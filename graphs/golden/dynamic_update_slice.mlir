module @dynamic_update_slice {
  func.func public @main(%arg0: tensor<5x4xf64>, %arg1: tensor<2x2xf64>, %arg2: tensor<i32>, %arg3: tensor<i32>) -> (tensor<5x4xf64>) {
    %0 = "stablehlo.dynamic_update_slice"(%arg0, %arg1, %arg2, %arg3) : (tensor<5x4xf64>, tensor<2x2xf64>, tensor<i32>, tensor<i32>) -> tensor<5x4xf64>
    "func.return"(%0) : (tensor<5x4xf64>) -> ()
  }
}
