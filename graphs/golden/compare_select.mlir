module @compare_select {
  func.func public @main(%arg0: tensor<6xf64>, %arg1: tensor<6xf64>) -> (tensor<6xf64>) {
    %0 = "stablehlo.compare"(%arg0, %arg1) {comparison_direction = #stablehlo<comparison_direction LT>} : (tensor<6xf64>, tensor<6xf64>) -> tensor<6xi1>
    %1 = "stablehlo.multiply"(%arg0, %arg1) : (tensor<6xf64>, tensor<6xf64>) -> tensor<6xf64>
    %2 = "stablehlo.exponential"(%arg1) : (tensor<6xf64>) -> tensor<6xf64>
    %3 = "stablehlo.select"(%0, %1, %2) : (tensor<6xi1>, tensor<6xf64>, tensor<6xf64>) -> tensor<6xf64>
    "func.return"(%3) : (tensor<6xf64>) -> ()
  }
}
