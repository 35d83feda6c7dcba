module @slices_along_two_axes {
  func.func public @main(%arg0: tensor<4x4xf64>) -> (tensor<2x4xf64>) {
    %0 = "stablehlo.slice"(%arg0) {limit_indices = array<i64: 2, 4>, start_indices = array<i64: 0, 0>, strides = array<i64: 1, 1>} : (tensor<4x4xf64>) -> tensor<2x4xf64>
    %1 = "stablehlo.slice"(%arg0) {limit_indices = array<i64: 4, 2>, start_indices = array<i64: 0, 0>, strides = array<i64: 1, 1>} : (tensor<4x4xf64>) -> tensor<4x2xf64>
    %2 = "stablehlo.transpose"(%1) {permutation = array<i64: 1, 0>} : (tensor<4x2xf64>) -> tensor<2x4xf64>
    %3 = "stablehlo.multiply"(%0, %2) : (tensor<2x4xf64>, tensor<2x4xf64>) -> tensor<2x4xf64>
    "func.return"(%3) : (tensor<2x4xf64>) -> ()
  }
}
