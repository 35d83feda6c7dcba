module @slices_tiling_an_axis {
  func.func public @main(%arg0: tensor<6x4xf64>) -> (tensor<2x4xf64>) {
    %0 = "stablehlo.slice"(%arg0) {limit_indices = array<i64: 2, 4>, start_indices = array<i64: 0, 0>, strides = array<i64: 1, 1>} : (tensor<6x4xf64>) -> tensor<2x4xf64>
    %1 = "stablehlo.slice"(%arg0) {limit_indices = array<i64: 3, 4>, start_indices = array<i64: 2, 0>, strides = array<i64: 1, 1>} : (tensor<6x4xf64>) -> tensor<1x4xf64>
    %2 = "stablehlo.slice"(%arg0) {limit_indices = array<i64: 6, 4>, start_indices = array<i64: 4, 0>, strides = array<i64: 1, 1>} : (tensor<6x4xf64>) -> tensor<2x4xf64>
    %3 = "stablehlo.multiply"(%0, %2) : (tensor<2x4xf64>, tensor<2x4xf64>) -> tensor<2x4xf64>
    %4 = "stablehlo.sine"(%1) : (tensor<1x4xf64>) -> tensor<1x4xf64>
    %5 = "stablehlo.broadcast_in_dim"(%4) {broadcast_dimensions = array<i64: 0, 1>} : (tensor<1x4xf64>) -> tensor<2x4xf64>
    %6 = "stablehlo.add"(%3, %5) : (tensor<2x4xf64>, tensor<2x4xf64>) -> tensor<2x4xf64>
    "func.return"(%6) : (tensor<2x4xf64>) -> ()
  }
}
