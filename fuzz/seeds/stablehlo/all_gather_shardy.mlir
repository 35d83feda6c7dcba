module @all_gather_shardy attributes {mhlo.num_partitions = 4 : i32, mhlo.num_replicas = 1 : i32} {
  sdy.mesh @mesh = <["data"=4]>
  func.func public @main(%arg0: tensor<8x4xf64> {sdy.sharding = #sdy.sharding<@mesh, [{}, {}]>}) -> (tensor<8x4xf64> {sdy.sharding = #sdy.sharding<@mesh, [{}, {}]>}) {
    %0 = "sdy.manual_computation"(%arg0) ({
    ^bb0(%1: tensor<2x4xf64>):
      %2 = "stablehlo.all_gather"(%1) {all_gather_dim = 0 : i64, channel_handle = #stablehlo.channel_handle<handle = 1, type = 1>, replica_groups = dense<[[0, 1, 2, 3]]> : tensor<1x4xi64>, use_global_device_ids} : (tensor<2x4xf64>) -> tensor<8x4xf64>
      "sdy.return"(%2) : (tensor<8x4xf64>) -> ()
    }) {in_shardings = #sdy.sharding_per_value<[<@mesh, [{"data"}, {}]>]>, manual_axes = #sdy<manual_axes{"data"}>, out_shardings = #sdy.sharding_per_value<[<@mesh, [{}, {}]>]>} : (tensor<8x4xf64>) -> tensor<8x4xf64>
    "func.return"(%0) : (tensor<8x4xf64>) -> ()
  }
}
