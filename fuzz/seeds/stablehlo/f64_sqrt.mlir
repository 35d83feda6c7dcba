module @f64_sqrt {
  func.func public @main(%a: tensor<3xf64>) -> (tensor<3xf64>, tensor<3xf64>) {
    %0 = stablehlo.sqrt %a : tensor<3xf64>
    %1 = stablehlo.multiply %0, %0 : tensor<3xf64>
    return %0, %1 : tensor<3xf64>, tensor<3xf64>
  }
}
