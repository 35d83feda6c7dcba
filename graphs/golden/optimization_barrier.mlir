module @optimization_barrier {
  func.func public @main(%arg0: tensor<3xf64>, %arg1: tensor<3xf64>) -> (tensor<3xf64>) {
    %0 = "stablehlo.exponential"(%arg0) : (tensor<3xf64>) -> tensor<3xf64>
    %1:2 = "stablehlo.optimization_barrier"(%0, %arg1) : (tensor<3xf64>, tensor<3xf64>) -> (tensor<3xf64>, tensor<3xf64>)
    %2 = "stablehlo.multiply"(%1#0, %1#1) : (tensor<3xf64>, tensor<3xf64>) -> tensor<3xf64>
    "func.return"(%2) : (tensor<3xf64>) -> ()
  }
}
