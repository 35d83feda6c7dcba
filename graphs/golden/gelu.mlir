module @gelu {
  func.func public @main(%arg0: tensor<8xf64>) -> (tensor<8xf64>) {
    %0 = "stablehlo.constant"() {value = dense<5.0> : tensor<f64>} : () -> tensor<f64>
    %1 = "stablehlo.broadcast_in_dim"(%0) {broadcast_dimensions = array<i64>} : (tensor<f64>) -> tensor<8xf64>
    %2 = "stablehlo.multiply"(%arg0, %1) : (tensor<8xf64>, tensor<8xf64>) -> tensor<8xf64>
    %3 = "stablehlo.constant"() {value = dense<7.07106781186547573e-1> : tensor<8xf64>} : () -> tensor<8xf64>
    %4 = "stablehlo.constant"() {value = dense<1.00000000000000000e0> : tensor<8xf64>} : () -> tensor<8xf64>
    %5 = "stablehlo.constant"() {value = dense<5.00000000000000000e-1> : tensor<8xf64>} : () -> tensor<8xf64>
    %6 = "stablehlo.multiply"(%2, %3) : (tensor<8xf64>, tensor<8xf64>) -> tensor<8xf64>
    %7 = "chlo.erf"(%6) : (tensor<8xf64>) -> tensor<8xf64>
    %8 = "stablehlo.add"(%7, %4) : (tensor<8xf64>, tensor<8xf64>) -> tensor<8xf64>
    %9 = "stablehlo.multiply"(%2, %8) : (tensor<8xf64>, tensor<8xf64>) -> tensor<8xf64>
    %10 = "stablehlo.multiply"(%9, %5) : (tensor<8xf64>, tensor<8xf64>) -> tensor<8xf64>
    "func.return"(%10) : (tensor<8xf64>) -> ()
  }
}
