module @conv_depthwise {
  func.func public @main(%arg0: tensor<2x5x5x3xf64>, %arg1: tensor<3x3x1x3xf64>) -> (tensor<2x5x5x3xf64>) {
    %0 = "stablehlo.convolution"(%arg0, %arg1) {batch_group_count = 1 : i64, dimension_numbers = #stablehlo.conv<[b, 0, 1, f]x[0, 1, i, o]->[b, 0, 1, f]>, feature_group_count = 3 : i64, lhs_dilation = array<i64: 1, 1>, padding = dense<[[1, 1], [1, 1]]> : tensor<2x2xi64>, rhs_dilation = array<i64: 1, 1>, window_strides = array<i64: 1, 1>} : (tensor<2x5x5x3xf64>, tensor<3x3x1x3xf64>) -> tensor<2x5x5x3xf64>
    "func.return"(%0) : (tensor<2x5x5x3xf64>) -> ()
  }
}
