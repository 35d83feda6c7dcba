module @reverse {
  func.func public @main(%arg0: tensor<3x4xf64>) -> (tensor<3x4xf64>) {
    %0 = "stablehlo.reverse"(%arg0) {dimensions = array<i64: 1>} : (tensor<3x4xf64>) -> tensor<3x4xf64>
    "func.return"(%0) : (tensor<3x4xf64>) -> ()
  }
}
