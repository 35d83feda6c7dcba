module @reduce_max {
  func.func public @main(%a: tensor<2x3xf32>) -> tensor<2xf32> {
    %init = stablehlo.constant dense<0xFF800000> : tensor<f32>
    %0 = stablehlo.reduce(%a init: %init) across dimensions = [1] : (tensor<2x3xf32>, tensor<f32>) -> tensor<2xf32>
     reducer(%x: tensor<f32>, %y: tensor<f32>) {
      %m = stablehlo.maximum %x, %y : tensor<f32>
      stablehlo.return %m : tensor<f32>
    }
    return %0 : tensor<2xf32>
  }
}
