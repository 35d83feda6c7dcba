module @dot_general_leading_free {
  func.func public @main(%arg0: tensor<2x3x4xf64>, %arg1: tensor<4x2x5xf64>) -> (tensor<2x3x2x5xf64>) {
    %0 = "stablehlo.dot_general"(%arg0, %arg1) {dot_dimension_numbers = #stablehlo.dot<lhs_contracting_dimensions = [2], rhs_contracting_dimensions = [0]>} : (tensor<2x3x4xf64>, tensor<4x2x5xf64>) -> tensor<2x3x2x5xf64>
    "func.return"(%0) : (tensor<2x3x2x5xf64>) -> ()
  }
}
