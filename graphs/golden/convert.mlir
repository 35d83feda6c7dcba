module @convert {
  func.func public @main(%arg0: tensor<4xf64>) -> (tensor<4xf64>) {
    %0 = "stablehlo.convert"(%arg0) : (tensor<4xf64>) -> tensor<4xf32>
    %1 = "stablehlo.constant"() {value = dense<3.0> : tensor<f32>} : () -> tensor<f32>
    %2 = "stablehlo.broadcast_in_dim"(%1) {broadcast_dimensions = array<i64>} : (tensor<f32>) -> tensor<4xf32>
    %3 = "stablehlo.multiply"(%0, %2) : (tensor<4xf32>, tensor<4xf32>) -> tensor<4xf32>
    %4 = "stablehlo.convert"(%3) : (tensor<4xf32>) -> tensor<4xf64>
    "func.return"(%4) : (tensor<4xf64>) -> ()
  }
}
