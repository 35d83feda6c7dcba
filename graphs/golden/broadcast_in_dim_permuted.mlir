module @broadcast_in_dim_permuted {
  func.func public @main(%arg0: tensor<2x3xf64>) -> (tensor<3x4x2xf64>) {
    %0 = "stablehlo.broadcast_in_dim"(%arg0) {broadcast_dimensions = array<i64: 2, 0>} : (tensor<2x3xf64>) -> tensor<3x4x2xf64>
    "func.return"(%0) : (tensor<3x4x2xf64>) -> ()
  }
}
