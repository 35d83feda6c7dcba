module @dot_general_permuted {
  func.func public @main(%arg0: tensor<4x2x3xf64>, %arg1: tensor<3x2x5xf64>) -> (tensor<2x4x5xf64>) {
    %0 = "stablehlo.dot_general"(%arg0, %arg1) {dot_dimension_numbers = #stablehlo.dot<lhs_batching_dimensions = [1], rhs_batching_dimensions = [1], lhs_contracting_dimensions = [2], rhs_contracting_dimensions = [0]>} : (tensor<4x2x3xf64>, tensor<3x2x5xf64>) -> tensor<2x4x5xf64>
    "func.return"(%0) : (tensor<2x4x5xf64>) -> ()
  }
}
