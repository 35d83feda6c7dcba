module @erfc {
  func.func public @main(%arg0: tensor<4xf64>) -> (tensor<4xf64>) {
    %0 = "stablehlo.constant"() {value = dense<2.0> : tensor<f64>} : () -> tensor<f64>
    %1 = "stablehlo.broadcast_in_dim"(%0) {broadcast_dimensions = array<i64>} : (tensor<f64>) -> tensor<4xf64>
    %2 = "stablehlo.multiply"(%arg0, %1) : (tensor<4xf64>, tensor<4xf64>) -> tensor<4xf64>
    %3 = "chlo.erfc"(%2) : (tensor<4xf64>) -> tensor<4xf64>
    "func.return"(%3) : (tensor<4xf64>) -> ()
  }
}
