module @bf16_fma {
  func.func public @main(%a: tensor<4xbf16>, %b: tensor<4xbf16>, %c: tensor<4xbf16>) -> tensor<4xbf16> {
    %0 = stablehlo.multiply %a, %b : tensor<4xbf16>
    %1 = stablehlo.add %0, %c : tensor<4xbf16>
    return %1 : tensor<4xbf16>
  }
}
