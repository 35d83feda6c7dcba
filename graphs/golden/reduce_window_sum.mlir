module @reduce_window_sum {
  func.func public @main(%arg0: tensor<2x5x4x3xf64>) -> (tensor<2x3x4x3xf64>) {
    %0 = "stablehlo.constant"() {value = dense<0.0> : tensor<f64>} : () -> tensor<f64>
    %1 = "stablehlo.reduce_window"(%arg0, %0) ({
    ^bb0(%2: tensor<f64>, %3: tensor<f64>):
      %4 = "stablehlo.add"(%2, %3) : (tensor<f64>, tensor<f64>) -> tensor<f64>
      "stablehlo.return"(%4) : (tensor<f64>) -> ()
    }) {padding = dense<[[0, 0], [1, 0], [0, 2], [0, 0]]> : tensor<4x2xi64>, window_dimensions = array<i64: 1, 2, 3, 1>, window_strides = array<i64: 1, 2, 1, 1>} : (tensor<2x5x4x3xf64>, tensor<f64>) -> tensor<2x3x4x3xf64>
    "func.return"(%1) : (tensor<2x3x4x3xf64>) -> ()
  }
}
