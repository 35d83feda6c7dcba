module @slices_overlapping {
  func.func public @main(%arg0: tensor<5x3xf64>) -> (tensor<3x3xf64>) {
    %0 = "stablehlo.slice"(%arg0) {limit_indices = array<i64: 3, 3>, start_indices = array<i64: 0, 0>, strides = array<i64: 1, 1>} : (tensor<5x3xf64>) -> tensor<3x3xf64>
    %1 = "stablehlo.slice"(%arg0) {limit_indices = array<i64: 5, 3>, start_indices = array<i64: 2, 0>, strides = array<i64: 1, 1>} : (tensor<5x3xf64>) -> tensor<3x3xf64>
    %2 = "stablehlo.multiply"(%0, %1) : (tensor<3x3xf64>, tensor<3x3xf64>) -> tensor<3x3xf64>
    "func.return"(%2) : (tensor<3x3xf64>) -> ()
  }
}
