module @avg_pool {
  func.func public @main(%arg0: tensor<1x4x4x2xf64>) -> (tensor<1x2x2x2xf64>) {
    %0 = "stablehlo.constant"() {value = dense<0.0> : tensor<f64>} : () -> tensor<f64>
    %1 = "stablehlo.reduce_window"(%arg0, %0) ({
    ^bb0(%2: tensor<f64>, %3: tensor<f64>):
      %4 = "stablehlo.add"(%2, %3) : (tensor<f64>, tensor<f64>) -> tensor<f64>
      "stablehlo.return"(%4) : (tensor<f64>) -> ()
    }) {padding = dense<[[0, 0], [0, 0], [0, 0], [0, 0]]> : tensor<4x2xi64>, window_dimensions = array<i64: 1, 2, 2, 1>, window_strides = array<i64: 1, 2, 2, 1>} : (tensor<1x4x4x2xf64>, tensor<f64>) -> tensor<1x2x2x2xf64>
    %5 = "stablehlo.constant"() {value = dense<1.0> : tensor<f64>} : () -> tensor<f64>
    %6 = "stablehlo.broadcast_in_dim"(%5) {broadcast_dimensions = array<i64>} : (tensor<f64>) -> tensor<1x4x4x2xf64>
    %7 = "stablehlo.constant"() {value = dense<0.0> : tensor<f64>} : () -> tensor<f64>
    %8 = "stablehlo.reduce_window"(%6, %7) ({
    ^bb0(%9: tensor<f64>, %10: tensor<f64>):
      %11 = "stablehlo.add"(%9, %10) : (tensor<f64>, tensor<f64>) -> tensor<f64>
      "stablehlo.return"(%11) : (tensor<f64>) -> ()
    }) {padding = dense<[[0, 0], [0, 0], [0, 0], [0, 0]]> : tensor<4x2xi64>, window_dimensions = array<i64: 1, 2, 2, 1>, window_strides = array<i64: 1, 2, 2, 1>} : (tensor<1x4x4x2xf64>, tensor<f64>) -> tensor<1x2x2x2xf64>
    %12 = "stablehlo.divide"(%1, %8) : (tensor<1x2x2x2xf64>, tensor<1x2x2x2xf64>) -> tensor<1x2x2x2xf64>
    "func.return"(%12) : (tensor<1x2x2x2xf64>) -> ()
  }
}
