module @axis_index_shardy attributes {mhlo.num_partitions = 4 : i32, mhlo.num_replicas = 1 : i32} {
  sdy.mesh @mesh = <["data"=4]>
  func.func public @main(%arg0: tensor<8x4xf64> {sdy.sharding = #sdy.sharding<@mesh, [{}, {}]>}) -> (tensor<8x4xf64> {sdy.sharding = #sdy.sharding<@mesh, [{}, {}]>}) {
    %0 = "sdy.manual_computation"(%arg0) ({
    ^bb0(%1: tensor<2x4xf64>):
      %2 = "stablehlo.partition_id"() : () -> tensor<ui32>
      %3 = "stablehlo.convert"(%2) : (tensor<ui32>) -> tensor<i32>
      %4 = "stablehlo.constant"() {value = dense<1> : tensor<i32>} : () -> tensor<i32>
      %5 = "stablehlo.divide"(%3, %4) : (tensor<i32>, tensor<i32>) -> tensor<i32>
      %6 = "stablehlo.constant"() {value = dense<4> : tensor<i32>} : () -> tensor<i32>
      %7 = "stablehlo.remainder"(%5, %6) : (tensor<i32>, tensor<i32>) -> tensor<i32>
      %8 = "stablehlo.convert"(%7) : (tensor<i32>) -> tensor<f64>
      %9 = "stablehlo.broadcast_in_dim"(%8) {broadcast_dimensions = array<i64>} : (tensor<f64>) -> tensor<2x4xf64>
      %10 = "stablehlo.add"(%1, %9) : (tensor<2x4xf64>, tensor<2x4xf64>) -> tensor<2x4xf64>
      %11 = "stablehlo.all_gather"(%10) {all_gather_dim = 0 : i64, channel_handle = #stablehlo.channel_handle<handle = 1, type = 1>, replica_groups = dense<[[0, 1, 2, 3]]> : tensor<1x4xi64>, use_global_device_ids} : (tensor<2x4xf64>) -> tensor<8x4xf64>
      "sdy.return"(%11) : (tensor<8x4xf64>) -> ()
    }) {in_shardings = #sdy.sharding_per_value<[<@mesh, [{"data"}, {}]>]>, manual_axes = #sdy<manual_axes{"data"}>, out_shardings = #sdy.sharding_per_value<[<@mesh, [{}, {}]>]>} : (tensor<8x4xf64>) -> tensor<8x4xf64>
    "func.return"(%0) : (tensor<8x4xf64>) -> ()
  }
}
