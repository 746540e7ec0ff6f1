// FID against images seen (eval/fid_curves.h): reading a run's metrics.jsonl (resumed
// steps, a torn last line, damage), the crossing interpolation, and the written table.
#include "eval/fid_curves.h"
#include "eval/image_io.h"

#include <gtest/gtest.h>

#include "tests/test_dirs.h"

#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>

namespace de = difftrain::eval;

namespace {
void write_text(const std::filesystem::path& path, const std::string& text) {
  std::filesystem::create_directories(path.parent_path());
  std::ofstream(path) << text;
}
std::string read_text(const std::filesystem::path& path) {
  std::ifstream in(path);
  std::stringstream s;
  s << in.rdbuf();
  return s.str();
}
}  // namespace

TEST(FidCurves, ReadsThePointsAndKeepsTheLastOfARepeatedStep) {
  const auto dir = fresh_test_dir();
  write_text(dir / "run" / "metrics.jsonl",
             "{\"step\": 50, \"loss\": 0.3, \"images_seen\": 1600}\n"
             "{\"step\": 100, \"images_seen\": 3200, \"fid\": 80.5}\n"
             "{\"step\": 200, \"images_seen\": 6400, \"fid\": 60.0}\n"
             "{\"event\": \"rollback\", \"step\": 230, \"to_step\": 100}\n"
             "{\"step\": 200, \"images_seen\": 6400, \"fid\": 61.25}\n"
             "{\"step\": 300, \"images_seen\": 9600, \"fi");  // torn by a crash
  const auto c = de::read_fid_curve((dir / "run").string(), "base");
  EXPECT_EQ(c.label, "base");
  EXPECT_EQ(c.steps, (std::vector<int64_t>{100, 200}));
  EXPECT_EQ(c.images_seen, (std::vector<int64_t>{3200, 6400}));
  EXPECT_EQ(c.fid, (std::vector<double>{80.5, 61.25}));
}

TEST(FidCurves, ErrorsNameTheFileAndWhatIsWrong) {
  const auto dir = fresh_test_dir();
  auto message = [&](const std::string& text) {
    write_text(dir / "r" / "metrics.jsonl", text);
    try {
      de::read_fid_curve((dir / "r").string(), "r");
    } catch (const std::runtime_error& e) {
      return std::string(e.what());
    }
    return std::string("no error");
  };
  EXPECT_NE(message("{\"step\": 1, \"loss\": 2}\n").find("no FID point (train with eval.every > 0"), std::string::npos);
  EXPECT_NE(message("oops\n{\"step\": 1, \"images_seen\": 2, \"fid\": 3}\n").find("line 1 is not JSON"),
            std::string::npos);
  EXPECT_NE(message("{\"step\": 1, \"images_seen\": \"x\", \"fid\": 3}\n").find("line 1: an FID point needs"),
            std::string::npos);
  try {
    de::read_fid_curve((dir / "missing").string(), "m");
    FAIL();
  } catch (const std::runtime_error& e) {
    EXPECT_NE(std::string(e.what()).find((dir / "missing" / "metrics.jsonl").string() + ": cannot be read"),
              std::string::npos);
  }
}

TEST(FidCurves, ImagesToReachInterpolatesTheCrossing) {
  const de::FidCurve c{"c", {1, 2, 3}, {1000, 2000, 4000}, {50, 30, 20}};
  EXPECT_DOUBLE_EQ(*de::images_to_reach(c, 60), 1000);   // already below at the first point
  EXPECT_DOUBLE_EQ(*de::images_to_reach(c, 40), 1500);   // halfway from 50 to 30
  EXPECT_DOUBLE_EQ(*de::images_to_reach(c, 25), 3000);   // halfway from 30 to 20
  EXPECT_DOUBLE_EQ(*de::images_to_reach(c, 20), 4000);
  EXPECT_FALSE(de::images_to_reach(c, 19.9).has_value());
  // The first crossing counts, not a later one after a rise.
  const de::FidCurve bumpy{"b", {1, 2, 3, 4}, {100, 200, 300, 400}, {40, 20, 35, 10}};
  EXPECT_DOUBLE_EQ(*de::images_to_reach(bumpy, 30), 150);
}

TEST(FidCurves, WritesCsvPlotAndTheTableAgainstTheFirstRun) {
  const auto dir = fresh_test_dir();
  // The baseline first reaches its final FID 40 at 480 images (between 38 and 45): fractions are of that.
  const std::vector<de::FidCurve> curves = {{"base", {10, 15, 20}, {320, 480, 640}, {50, 40, 40}},
                                            {"better", {10, 20}, {320, 640}, {40, 30}},
                                            {"worse", {10, 20}, {320, 640}, {60, 45}}};
  const auto table = de::write_fid_curves(curves, (dir / "out").string(), "t");
  EXPECT_EQ(read_text(dir / "out" / "fid_vs_images.csv"),
            "label,step,images_seen,fid\nbase,10,320,50.0000\nbase,15,480,40.0000\nbase,20,640,40.0000\n"
            "better,10,320,40.0000\n"
            "better,20,640,30.0000\nworse,10,320,60.0000\nworse,20,640,45.0000\n");
  EXPECT_EQ(read_text(dir / "out" / "fid_vs_images.md"), table);
  EXPECT_NE(table.find("fraction of base's 480 |"), std::string::npos) << table;
  EXPECT_NE(table.find("| base | 40.00 | 40.00 | 640 | 480 | 1.00 |"), std::string::npos) << table;
  EXPECT_NE(table.find("| better | 30.00 | 30.00 | 640 | 320 | 0.67 |"), std::string::npos) << table;
  EXPECT_NE(table.find("| worse | 45.00 | 45.00 | 640 | not reached | - |"), std::string::npos) << table;
  const auto png = de::read_png((dir / "out" / "fid_vs_images.png").string());
  EXPECT_EQ(png.width, 800);
  EXPECT_EQ(png.height, 500);
}
