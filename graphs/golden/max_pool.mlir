module @max_pool {
  func.func public @main(%arg0: tensor<1x5x5x2xf64>) -> (tensor<1x3x3x2xf64>) {
    %0 = "stablehlo.constant"() {value = dense<0xFFF0000000000000> : tensor<f64>} : () -> tensor<f64>
    %1 = "stablehlo.reduce_window"(%arg0, %0) ({
    ^bb0(%2: tensor<f64>, %3: tensor<f64>):
      %4 = "stablehlo.maximum"(%2, %3) : (tensor<f64>, tensor<f64>) -> tensor<f64>
      "stablehlo.return"(%4) : (tensor<f64>) -> ()
    }) {padding = dense<[[0, 0], [1, 1], [1, 1], [0, 0]]> : tensor<4x2xi64>, window_dimensions = array<i64: 1, 3, 3, 1>, window_strides = array<i64: 1, 2, 2, 1>} : (tensor<1x5x5x2xf64>, tensor<f64>) -> tensor<1x3x3x2xf64>
    "func.return"(%1) : (tensor<1x3x3x2xf64>) -> ()
  }
}
