module @reduce_max {
  func.func public @main(%arg0: tensor<3x5xf64>) -> (tensor<3xf64>) {
    %0 = "stablehlo.constant"() {value = dense<0xFFF0000000000000> : tensor<f64>} : () -> tensor<f64>
    %1 = "stablehlo.reduce"(%arg0, %0) ({
    ^bb0(%2: tensor<f64>, %3: tensor<f64>):
      %4 = "stablehlo.maximum"(%2, %3) : (tensor<f64>, tensor<f64>) -> tensor<f64>
      "stablehlo.return"(%4) : (tensor<f64>) -> ()
    }) {dimensions = array<i64: 1>} : (tensor<3x5xf64>, tensor<f64>) -> tensor<3xf64>
    "func.return"(%1) : (tensor<3xf64>) -> ()
  }
}
