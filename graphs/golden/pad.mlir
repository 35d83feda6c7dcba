module @pad {
  func.func public @main(%arg0: tensor<3x4xf64>, %arg1: tensor<f64>) -> (tensor<8x9xf64>) {
    %0 = "stablehlo.pad"(%arg0, %arg1) {edge_padding_high = array<i64: 2, 0>, edge_padding_low = array<i64: 1, -1>, interior_padding = array<i64: 1, 2>} : (tensor<3x4xf64>, tensor<f64>) -> tensor<8x9xf64>
    "func.return"(%0) : (tensor<8x9xf64>) -> ()
  }
}
