module @min {
  func.func public @main(%arg0: tensor<5xf64>, %arg1: tensor<5xf64>) -> (tensor<5xf64>) {
    %0 = "stablehlo.minimum"(%arg0, %arg1) : (tensor<5xf64>, tensor<5xf64>) -> tensor<5xf64>
    "func.return"(%0) : (tensor<5xf64>) -> ()
  }
}
