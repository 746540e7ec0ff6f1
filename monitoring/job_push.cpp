#include "monitoring/job_push.h"

#include <cstdio>

#include "monitoring/registry_util.h"

namespace difftrain::monitoring {
namespace {

double unix_now() {
  return std::chrono::duration<double>(std::chrono::system_clock::now().time_since_epoch()).count();
}

}  // namespace

JobPush::JobPush(const std::string& gateway, const PushIdentity& identity, const std::string& setting,
                 std::chrono::milliseconds interval)
    : registry_(std::make_shared<prometheus::Registry>()),
      run_(identity.run),
      host_(identity.host),
      rank_(std::to_string(identity.rank)),
      interval_(interval) {
  const prometheus::Labels labels = identity_labels(identity);
  auto& r = *registry_;
  state_gauge_ = std::make_unique<JobStateGauge>(r, labels);
  images_done_ = add_gauge(r, "difftrain_job_images_done", "Images this job has made so far.", labels);
  images_total_ = add_gauge(r, "difftrain_job_images_total", "Images this job makes in all.", labels);
  last_progress_timestamp_ = add_gauge(r, "difftrain_job_last_progress_timestamp_seconds",
                                       "Unix time of the last progress report (stall: time() minus it).", labels);
  last_progress_timestamp_->Set(unix_now());
  sweep_fid_ = &prometheus::BuildGauge()
                    .Name("difftrain_sweep_fid")
                    .Help("FID of one sweep point (labels sampler, steps, guidance, eta).")
                    .Register(r);
  add_gauge(r, "difftrain_process_start_time_seconds", "Unix time this process started (changes on a restart).",
            labels)
      ->Set(process_start_time_seconds());
  gateway_ = std::make_unique<Pushgateway>(gateway, identity, registry_, setting);
  push();
}

JobPush::~JobPush() {
  if (state_ != JobState::kRunning) return;
  state_ = JobState::kFailed;
  state_gauge_->Set(state_);
  push();
}

void JobPush::progress(double done, int64_t total) {
  images_done_->Set(done);
  images_total_->Set(static_cast<double>(total));
  last_progress_timestamp_->Set(unix_now());
  if (Clock::now() - last_push_ >= interval_) push();
}

void JobPush::record_fid(const std::string& sampler, int64_t steps, double guidance, double eta, double fid) {
  char guidance_text[32], eta_text[32];
  std::snprintf(guidance_text, sizeof guidance_text, "%g", guidance);
  std::snprintf(eta_text, sizeof eta_text, "%g", eta);
  sweep_fid_->Add({{"run", run_}, {"host", host_}, {"rank", rank_}, {"sampler", sampler},
            {"steps", std::to_string(steps)}, {"guidance", guidance_text}, {"eta", eta_text}})
      .Set(fid);
  push();
}

void JobPush::finish(JobState state) {
  state_ = state;
  state_gauge_->Set(state);
  push();
}

void JobPush::push() {
  last_push_ = Clock::now();
  gateway_->push();
}

}  // namespace difftrain::monitoring
