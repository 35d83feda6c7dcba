module @sign {
  func.func public @main(%arg0: tensor<4xf64>) -> (tensor<4xf64>) {
    %0 = "stablehlo.sign"(%arg0) : (tensor<4xf64>) -> tensor<4xf64>
    %1 = "stablehlo.multiply"(%0, %arg0) : (tensor<4xf64>, tensor<4xf64>) -> tensor<4xf64>
    "func.return"(%1) : (tensor<4xf64>) -> ()
  }
}
