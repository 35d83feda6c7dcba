module @quick_gelu {
  func.func public @main(%arg0: tensor<8xf64>) -> (tensor<8xf64>) {
    %0 = "stablehlo.constant"() {value = dense<6.0> : tensor<f64>} : () -> tensor<f64>
    %1 = "stablehlo.broadcast_in_dim"(%0) {broadcast_dimensions = array<i64>} : (tensor<f64>) -> tensor<8xf64>
    %2 = "stablehlo.multiply"(%arg0, %1) : (tensor<8xf64>, tensor<8xf64>) -> tensor<8xf64>
    %3 = "stablehlo.constant"() {value = dense<1.70199999999999996e0> : tensor<8xf64>} : () -> tensor<8xf64>
    %4 = "stablehlo.multiply"(%2, %3) : (tensor<8xf64>, tensor<8xf64>) -> tensor<8xf64>
    %5 = "stablehlo.logistic"(%4) : (tensor<8xf64>) -> tensor<8xf64>
    %6 = "stablehlo.multiply"(%2, %5) : (tensor<8xf64>, tensor<8xf64>) -> tensor<8xf64>
    "func.return"(%6) : (tensor<8xf64>) -> ()
  }
}
