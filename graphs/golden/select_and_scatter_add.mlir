module @select_and_scatter_add {
  func.func public @main(%arg0: tensor<1x4x4x1xf64>, %arg1: tensor<1x2x2x1xf64>) -> (tensor<1x4x4x1xf64>) {
    %0 = "stablehlo.constant"() {value = dense<0.0> : tensor<f64>} : () -> tensor<f64>
    %1 = "stablehlo.select_and_scatter"(%arg0, %arg1, %0) ({
    ^bb0(%2: tensor<f64>, %3: tensor<f64>):
      %4 = "stablehlo.compare"(%2, %3) {comparison_direction = #stablehlo<comparison_direction GE>} : (tensor<f64>, tensor<f64>) -> tensor<i1>
      "stablehlo.return"(%4) : (tensor<i1>) -> ()
    }, {
    ^bb0(%5: tensor<f64>, %6: tensor<f64>):
      %7 = "stablehlo.add"(%5, %6) : (tensor<f64>, tensor<f64>) -> tensor<f64>
      "stablehlo.return"(%7) : (tensor<f64>) -> ()
    }) {padding = dense<[[0, 0], [0, 0], [0, 0], [0, 0]]> : tensor<4x2xi64>, window_dimensions = array<i64: 1, 2, 2, 1>, window_strides = array<i64: 1, 2, 2, 1>} : (tensor<1x4x4x1xf64>, tensor<1x2x2x1xf64>, tensor<f64>) -> tensor<1x4x4x1xf64>
    "func.return"(%1) : (tensor<1x4x4x1xf64>) -> ()
  }
}
