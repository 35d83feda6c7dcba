module @reshape {
  func.func public @main(%arg0: tensor<2x6xf64>) -> (tensor<3x2x2xf64>) {
    %0 = "stablehlo.reshape"(%arg0) : (tensor<2x6xf64>) -> tensor<3x2x2xf64>
    "func.return"(%0) : (tensor<3x2x2xf64>) -> ()
  }
}
