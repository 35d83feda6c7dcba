module @conv_strided {
  func.func public @main(%arg0: tensor<1x7x6x2xf64>, %arg1: tensor<3x2x2x3xf64>) -> (tensor<1x3x3x3xf64>) {
    %0 = "stablehlo.convolution"(%arg0, %arg1) {batch_group_count = 1 : i64, dimension_numbers = #stablehlo.conv<[b, 0, 1, f]x[0, 1, i, o]->[b, 0, 1, f]>, feature_group_count = 1 : i64, lhs_dilation = array<i64: 1, 1>, padding = dense<[[1, 0], [0, 2]]> : tensor<2x2xi64>, rhs_dilation = array<i64: 1, 1>, window_strides = array<i64: 2, 3>} : (tensor<1x7x6x2xf64>, tensor<3x2x2x3xf64>) -> tensor<1x3x3x3xf64>
    "func.return"(%0) : (tensor<1x3x3x3xf64>) -> ()
  }
}
