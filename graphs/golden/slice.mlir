module @slice {
  func.func public @main(%arg0: tensor<5x6xf64>) -> (tensor<2x2xf64>) {
    %0 = "stablehlo.slice"(%arg0) {limit_indices = array<i64: 5, 5>, start_indices = array<i64: 1, 0>, strides = array<i64: 2, 3>} : (tensor<5x6xf64>) -> tensor<2x2xf64>
    "func.return"(%0) : (tensor<2x2xf64>) -> ()
  }
}
