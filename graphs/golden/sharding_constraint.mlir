module @sharding_constraint {
  func.func public @main(%arg0: tensor<4x2xf64>) -> (tensor<4x2xf64>) {
    %0 = "stablehlo.sine"(%arg0) : (tensor<4x2xf64>) -> tensor<4x2xf64>
    "func.return"(%0) : (tensor<4x2xf64>) -> ()
  }
}
