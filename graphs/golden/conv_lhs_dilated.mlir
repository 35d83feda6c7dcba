module @conv_lhs_dilated {
  func.func public @main(%arg0: tensor<1x3x3x2xf64>, %arg1: tensor<2x2x2x1xf64>) -> (tensor<1x6x4x1xf64>) {
    %0 = "stablehlo.convolution"(%arg0, %arg1) {batch_group_count = 1 : i64, dimension_numbers = #stablehlo.conv<[b, 0, 1, f]x[0, 1, i, o]->[b, 0, 1, f]>, feature_group_count = 1 : i64, lhs_dilation = array<i64: 2, 2>, padding = dense<[[1, 1], [0, 0]]> : tensor<2x2xi64>, rhs_dilation = array<i64: 1, 1>, window_strides = array<i64: 1, 1>} : (tensor<1x3x3x2xf64>, tensor<2x2x2x1xf64>) -> tensor<1x6x4x1xf64>
    "func.return"(%0) : (tensor<1x6x4x1xf64>) -> ()
  }
}
