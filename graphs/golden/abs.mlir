module @abs {
  func.func public @main(%arg0: tensor<4xf64>) -> (tensor<4xf64>) {
    %0 = "stablehlo.negate"(%arg0) : (tensor<4xf64>) -> tensor<4xf64>
    %1 = "stablehlo.abs"(%0) : (tensor<4xf64>) -> tensor<4xf64>
    "func.return"(%1) : (tensor<4xf64>) -> ()
  }
}
