module @shifts {
  func.func public @main(%arg0: tensor<3xui32>, %arg1: tensor<3xui32>) -> (tensor<3xui32>) {
    %0 = "stablehlo.shift_left"(%arg0, %arg1) : (tensor<3xui32>, tensor<3xui32>) -> tensor<3xui32>
    %1 = "stablehlo.shift_right_logical"(%0, %arg1) : (tensor<3xui32>, tensor<3xui32>) -> tensor<3xui32>
    "func.return"(%1) : (tensor<3xui32>) -> ()
  }
}
