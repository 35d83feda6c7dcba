module @scan_reverse {
  func.func public @main(%arg0: tensor<2xf64>, %arg1: tensor<3x2xf64>) -> (tensor<2xf64>) {
    %0 = "stablehlo.constant"() {value = dense<0> : tensor<i32>} : () -> tensor<i32>
    %1:3 = "stablehlo.while"(%0, %arg0, %arg1) ({
    ^bb0(%2: tensor<i32>, %3: tensor<2xf64>, %4: tensor<3x2xf64>):
      %5 = "stablehlo.constant"() {value = dense<3> : tensor<i32>} : () -> tensor<i32>
      %6 = "stablehlo.compare"(%2, %5) {comparison_direction = #stablehlo<comparison_direction LT>} : (tensor<i32>, tensor<i32>) -> tensor<i1>
      "stablehlo.return"(%6) : (tensor<i1>) -> ()
    }, {
    ^bb0(%7: tensor<i32>, %8: tensor<2xf64>, %9: tensor<3x2xf64>):
      %10 = "stablehlo.constant"() {value = dense<2> : tensor<i32>} : () -> tensor<i32>
      %11 = "stablehlo.subtract"(%10, %7) : (tensor<i32>, tensor<i32>) -> tensor<i32>
      %12 = "stablehlo.constant"() {value = dense<0> : tensor<i32>} : () -> tensor<i32>
      %13 = "stablehlo.dynamic_slice"(%9, %11, %12) {slice_sizes = array<i64: 1, 2>} : (tensor<3x2xf64>, tensor<i32>, tensor<i32>) -> tensor<1x2xf64>
      %14 = "stablehlo.reshape"(%13) : (tensor<1x2xf64>) -> tensor<2xf64>
      %15 = "stablehlo.convert"(%11) : (tensor<i32>) -> tensor<f64>
      %16 = "stablehlo.constant"() {value = dense<1.0> : tensor<f64>} : () -> tensor<f64>
      %17 = "stablehlo.add"(%15, %16) : (tensor<f64>, tensor<f64>) -> tensor<f64>
      %18 = "stablehlo.multiply"(%8, %14) : (tensor<2xf64>, tensor<2xf64>) -> tensor<2xf64>
      %19 = "stablehlo.broadcast_in_dim"(%17) {broadcast_dimensions = array<i64>} : (tensor<f64>) -> tensor<2xf64>
      %20 = "stablehlo.add"(%18, %19) : (tensor<2xf64>, tensor<2xf64>) -> tensor<2xf64>
      %21 = "stablehlo.sine"(%20) : (tensor<2xf64>) -> tensor<2xf64>
      %22 = "stablehlo.constant"() {value = dense<1> : tensor<i32>} : () -> tensor<i32>
      %23 = "stablehlo.add"(%7, %22) : (tensor<i32>, tensor<i32>) -> tensor<i32>
      "stablehlo.return"(%23, %21, %9) : (tensor<i32>, tensor<2xf64>, tensor<3x2xf64>) -> ()
    }) : (tensor<i32>, tensor<2xf64>, tensor<3x2xf64>) -> (tensor<i32>, tensor<2xf64>, tensor<3x2xf64>)
    "func.return"(%1#1) : (tensor<2xf64>) -> ()
  }
}
