// Run under mpirun with 2+ ranks: the MPI communicator's collectives.
#include <gtest/gtest.h>
#include <mpi.h>
#include <torch/torch.h>

#include "trainer/communicator.h"
#include "trainer/mpi_session.h"
#include "trainer/weights_agreement.h"

using namespace difftrain;

namespace {
MpiSession* g_session = nullptr;
}

TEST(MpiCommunicator, AllReduceMeanAveragesEveryTensorInPlace) {
  auto comm = make_communicator(*g_session, torch::kCPU);
  ASSERT_GE(comm->world_size(), 2) << "run this test under mpirun -np 2";
  const double r = comm->rank(), n = comm->world_size();
  auto a = torch::full({3, 2}, r), b = torch::full({5}, 10 * r);
  comm->allreduce_mean({a, b});
  const double mean_rank = (n - 1) / 2;
  EXPECT_TRUE(torch::allclose(a, torch::full({3, 2}, mean_rank)));
  EXPECT_TRUE(torch::allclose(b, torch::full({5}, 10 * mean_rank)));
}

TEST(MpiCommunicator, BroadcastMakesEveryRankHoldRootsValues) {
  auto comm = make_communicator(*g_session, torch::kCPU);
  auto w = torch::full({4}, static_cast<float>(comm->rank() + 1));
  comm->broadcast({w}, 0);
  EXPECT_TRUE(torch::equal(w, torch::full({4}, 1.0f)));
}

TEST(MpiCommunicator, ScalarStatisticsAreSummedInFloat64) {
  auto comm = make_communicator(*g_session, torch::kCPU);
  const auto s = comm->allreduce_sum({1.0, 0.1 * comm->rank()});
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
