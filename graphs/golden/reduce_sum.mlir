module @reduce_sum {
  func.func public @main(%arg0: tensor<2x3x4xf64>) -> (tensor<3xf64>) {
    %0 = "stablehlo.constant"() {value = dense<0.0> : tensor<f64>} : () -> tensor<f64>
    %1 = "stablehlo.reduce"(%arg0, %0) ({
    ^bb0(%2: tensor<f64>, %3: tensor<f64>):
      %4 = "stablehlo.add"(%2, %3) : (tensor<f64>, tensor<f64>) -> tensor<f64>
      "stablehlo.return"(%4) : (tensor<f64>) -> ()
    }) {dimensions = array<i64: 0, 2>} : (tensor<2x3x4xf64>, tensor<f64>) -> tensor<3xf64>
    "func.return"(%1) : (tensor<3xf64>) -> ()
  }
}
