module @gelu_tanh {
  func.func public @main(%arg0: tensor<8xf64>) -> (tensor<8xf64>) {
    %0 = "stablehlo.constant"() {value = dense<4.0> : tensor<f64>} : () -> tensor<f64>
    %1 = "stablehlo.broadcast_in_dim"(%0) {broadcast_dimensions = array<i64>} : (tensor<f64>) -> tensor<8xf64>
    %2 = "stablehlo.multiply"(%arg0, %1) : (tensor<8xf64>, tensor<8xf64>) -> tensor<8xf64>
    %3 = "stablehlo.constant"() {value = dense<4.47149999999999978e-2> : tensor<8xf64>} : () -> tensor<8xf64>
    %4 = "stablehlo.constant"() {value = dense<7.97884560802865406e-1> : tensor<8xf64>} : () -> tensor<8xf64>
    %5 = "stablehlo.constant"() {value = dense<1.00000000000000000e0> : tensor<8xf64>} : () -> tensor<8xf64>
    %6 = "stablehlo.constant"() {value = dense<5.00000000000000000e-1> : tensor<8xf64>} : () -> tensor<8xf64>
    %7 = "stablehlo.multiply"(%2, %2) : (tensor<8xf64>, tensor<8xf64>) -> tensor<8xf64>
    %8 = "stablehlo.multiply"(%7, %2) : (tensor<8xf64>, tensor<8xf64>) -> tensor<8xf64>
    %9 = "stablehlo.multiply"(%8, %3) : (tensor<8xf64>, tensor<8xf64>) -> tensor<8xf64>
    %10 = "stablehlo.add"(%2, %9) : (tensor<8xf64>, tensor<8xf64>) -> tensor<8xf64>
    %11 = "stablehlo.multiply"(%10, %4) : (tensor<8xf64>, tensor<8xf64>) -> tensor<8xf64>
    %12 = "stablehlo.tanh"(%11) : (tensor<8xf64>) -> tensor<8xf64>
    %13 = "stablehlo.add"(%12, %5) : (tensor<8xf64>, tensor<8xf64>) -> tensor<8xf64>
    %14 = "stablehlo.multiply"(%2, %13) : (tensor<8xf64>, tensor<8xf64>) -> tensor<8xf64>
    %15 = "stablehlo.multiply"(%14, %6) : (tensor<8xf64>, tensor<8xf64>) -> tensor<8xf64>
    "func.return"(%15) : (tensor<8xf64>) -> ()
  }
}
