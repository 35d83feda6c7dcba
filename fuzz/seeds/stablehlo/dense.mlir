// Unsharded reference of the SPMD programs: y = x·w and the sum of all of y.
module @dense {
  func.func public @main(%x: tensor<8x4xf32>, %w: tensor<4x2xf32>) -> (tensor<8x2xf32>, tensor<f32>) {
    %0 = stablehlo.dot_general %x, %w, contracting_dims = [1] x [0] : (tensor<8x4xf32>, tensor<4x2xf32>) -> tensor<8x2xf32>
    %z = stablehlo.constant dense<0.0> : tensor<f32>
    %1 = stablehlo.reduce(%0 init: %z) applies stablehlo.add across dimensions = [0, 1] : (tensor<8x2xf32>, tensor<f32>) -> tensor<f32>
    return %0, %1 : tensor<8x2xf32>, tensor<f32>
  }
}
