module @not {
  func.func public @main(%arg0: tensor<5xf64>, %arg1: tensor<5xf64>) -> (tensor<5xf64>) {
    %0 = "stablehlo.compare"(%arg0, %arg1) {comparison_direction = #stablehlo<comparison_direction LT>} : (tensor<5xf64>, tensor<5xf64>) -> tensor<5xi1>
    %1 = "stablehlo.not"(%0) : (tensor<5xi1>) -> tensor<5xi1>
    %2 = "stablehlo.select"(%1, %arg0, %arg1) : (tensor<5xi1>, tensor<5xf64>, tensor<5xf64>) -> tensor<5xf64>
    "func.return"(%2) : (tensor<5xf64>) -> ()
  }
}
