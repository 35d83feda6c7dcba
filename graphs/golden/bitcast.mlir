module @bitcast {
  func.func public @main(%arg0: tensor<3xf64>) -> (tensor<3xf64>) {
    %0 = "stablehlo.bitcast_convert"(%arg0) : (tensor<3xf64>) -> tensor<3xui64>
    %1 = "stablehlo.bitcast_convert"(%0) : (tensor<3xui64>) -> tensor<3xf64>
    "func.return"(%1) : (tensor<3xf64>) -> ()
  }
}
