// Run under mpirun with 2+ ranks: the MPI communicator's collectives and the gradient reducer.
#include <gtest/gtest.h>
#include <mpi.h>
#include <torch/torch.h>

#include "distributed/communicator.h"
#include "distributed/gradient_reducer.h"
#include "distributed/mpi_session.h"
#include "distributed/weights_agreement.h"

using namespace difftrain;

namespace {
MpiSession* g_session = nullptr;
}

TEST(MpiCommunicator, AllReduceMeanAveragesEveryTensorInPlace) {
  auto comm = make_communicator(*g_session, torch::kCPU);
  ASSERT_GE(comm->world_size(), 2) << "run this test under mpirun -np 2";
  const double r = comm->rank(), n = comm->world_size();
  auto a = torch::full({3, 2}, r), b = torch::full({5}, 10 * r);
  comm->allreduce_mean({a, b}, "test tensors");
  const double mean_rank = (n - 1) / 2;
  EXPECT_TRUE(torch::allclose(a, torch::full({3, 2}, mean_rank)));
  EXPECT_TRUE(torch::allclose(b, torch::full({5}, 10 * mean_rank)));
}

TEST(MpiCommunicator, BroadcastMakesEveryRankHoldRootsValues) {
  auto comm = make_communicator(*g_session, torch::kCPU);
  auto w = torch::full({4}, static_cast<float>(comm->rank() + 1));
  comm->broadcast({w}, 0, "test weights");
  EXPECT_TRUE(torch::equal(w, torch::full({4}, 1.0f)));
}

TEST(MpiCommunicator, ScalarStatisticsAreSummedInFloat64) {
  auto comm = make_communicator(*g_session, torch::kCPU);
  const auto s = comm->allreduce_sum({1.0, 0.1 * comm->rank()}, "test sums");
  EXPECT_DOUBLE_EQ(s[0], comm->world_size());
  EXPECT_NEAR(s[1], 0.1 * comm->world_size() * (comm->world_size() - 1) / 2, 1e-12);
}

TEST(WeightsAgreement, PassesForIdenticalWeightsAndStopsEveryRankOtherwise) {
  auto comm = make_communicator(*g_session, torch::kCPU);
  torch::manual_seed(3);
  torch::nn::Linear layer(4, 3);
  EXPECT_NO_THROW(require_identical_weights(*comm, *layer, "test"));
  if (comm->rank() == 1) {
    torch::NoGradGuard g;
    layer->weight[0][0].add_(1e-6);
  }
  try {
    require_identical_weights(*comm, *layer, "checkpoint at step 7");
    FAIL() << "differing weights were not detected on rank " << comm->rank();
  } catch (const std::runtime_error& e) {
    EXPECT_NE(std::string(e.what()).find("checkpoint at step 7: the ranks' weights differ"), std::string::npos);
  }
}


namespace {

torch::nn::Sequential small_net() {
  torch::manual_seed(11);  // the same weights on every rank
  return torch::nn::Sequential(torch::nn::Linear(6, 16), torch::nn::SiLU(), torch::nn::Linear(16, 16),
                               torch::nn::SiLU(), torch::nn::Linear(16, 2));
}

// This rank's own data: every rank computes a different gradient.
torch::Tensor rank_batch(int rank, int micro) {
  torch::manual_seed(100 + 10 * rank + micro);
  return torch::randn({7, 6});
}

// The reference: local gradients without a reducer, averaged with one flat all-reduce.
std::vector<torch::Tensor> reference_mean_gradients(Communicator& comm, int micro_batches) {
  auto net = small_net();
  for (int m = 0; m < micro_batches; ++m) net->forward(rank_batch(comm.rank(), m)).pow(2).mean().backward();
  std::vector<torch::Tensor> grads;
  for (auto& p : net->parameters()) grads.push_back(p.grad().clone());
  comm.allreduce_mean(grads, "reference gradients");
  return grads;
}

}  // namespace

TEST(GradientReducer, BucketsStartDuringBackwardAndEqualTheFlatMean) {
  auto comm = make_communicator(*g_session, torch::kCPU);
  const auto expected = reference_mean_gradients(*comm, 1);
  auto net = small_net();
  GradientReducer reducer(net->parameters(), *comm, /*cap bytes*/ 300, /*first*/ 300);
  ASSERT_GE(reducer.bucket_count(), 3u);
  reducer.zero_grad();
  reducer.begin_backward(true);
  net->forward(rank_batch(comm->rank(), 0)).pow(2).mean().backward();
  reducer.finish();
  // Every bucket was complete, and so started, while backward ran: communication overlapped it.
  EXPECT_EQ(reducer.last_step().buckets_started_in_backward, static_cast<int64_t>(reducer.bucket_count()));
  for (size_t k = 0; k < expected.size(); ++k)
    EXPECT_TRUE(torch::allclose(reducer.gradients()[k], expected[k], 1e-6, 1e-7)) << "parameter " << k;
}

TEST(GradientReducer, AccumulationSynchronisesOnlyOnTheLastMicroBatch) {
  auto comm = make_communicator(*g_session, torch::kCPU);
  const auto expected = reference_mean_gradients(*comm, 3);
  auto net = small_net();
  GradientReducer reducer(net->parameters(), *comm, 300, 300);
  reducer.zero_grad();
  for (int m = 0; m < 3; ++m) {
    reducer.begin_backward(m == 2);
    net->forward(rank_batch(comm->rank(), m)).pow(2).mean().backward();
    if (m == 0) {
      // After a no-sync backward the gradient is still this rank's own: no collective ran.
      auto own = small_net();
      own->forward(rank_batch(comm->rank(), 0)).pow(2).mean().backward();
      EXPECT_TRUE(torch::allclose(reducer.gradients().back(), own->parameters().back().grad(), 1e-6, 1e-7));
    }
  }
  reducer.finish();
  for (size_t k = 0; k < expected.size(); ++k)
    EXPECT_TRUE(torch::allclose(reducer.gradients()[k], expected[k], 1e-6, 1e-7)) << "parameter " << k;
}

TEST(GradientReducer, AParameterUnusedThisStepStillTakesPart) {
  auto comm = make_communicator(*g_session, torch::kCPU);
  torch::manual_seed(5);
  torch::nn::Linear used(3, 3), unused(3, 3);
  auto params = used->parameters();
  for (auto& p : unused->parameters()) params.push_back(p);
  GradientReducer reducer(params, *comm, 1, 1);  // one bucket per parameter
  reducer.zero_grad();
  reducer.begin_backward(true);
  used->forward(torch::full({2, 3}, 1.0 + comm->rank())).sum().backward();
  reducer.finish();  // the unused parameters' buckets start here, in order, on every rank
  EXPECT_EQ(reducer.last_step().buckets_started_in_backward, 0);  // bucket 0 (unused) blocks the ones after it
  EXPECT_EQ(unused->weight.grad().abs().sum().item<double>(), 0.0);
  const double mean_input = 1.0 + (comm->world_size() - 1) / 2.0;
  EXPECT_TRUE(torch::allclose(used->weight.grad(), torch::full({3, 3}, 2 * mean_input)));
}

int main(int argc, char** argv) {
  MpiSession session(&argc, &argv);
  g_session = &session;
  ::testing::InitGoogleTest(&argc, argv);
  // Only rank 0 prints, so the ctest log shows one report.
  if (session.rank() != 0) {
    auto& listeners = ::testing::UnitTest::GetInstance()->listeners();
    delete listeners.Release(listeners.default_result_printer());
  }
  const int failed = RUN_ALL_TESTS();
  int any_failed = 0;
  MPI_Allreduce(&failed, &any_failed, 1, MPI_INT, MPI_MAX, MPI_COMM_WORLD);
  return any_failed;
}
