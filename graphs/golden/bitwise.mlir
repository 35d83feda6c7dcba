module @bitwise {
  func.func public @main(%arg0: tensor<3xui32>, %arg1: tensor<3xui32>) -> (tensor<3xui32>) {
    %0 = "stablehlo.and"(%arg0, %arg1) : (tensor<3xui32>, tensor<3xui32>) -> tensor<3xui32>
    %1 = "stablehlo.not"(%arg0) : (tensor<3xui32>) -> tensor<3xui32>
    %2 = "stablehlo.or"(%0, %1) : (tensor<3xui32>, tensor<3xui32>) -> tensor<3xui32>
    %3 = "stablehlo.xor"(%2, %arg1) : (tensor<3xui32>, tensor<3xui32>) -> tensor<3xui32>
    "func.return"(%3) : (tensor<3xui32>) -> ()
  }
}
