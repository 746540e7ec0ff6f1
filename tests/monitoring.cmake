# monitoring/: metrics endpoint scraped over HTTP, progress line, dashboard JSON.
add_executable(test_monitoring ${CMAKE_CURRENT_LIST_DIR}/test_metrics.cpp)
target_link_libraries(test_monitoring PRIVATE difftrain_monitoring prometheus-cpp::core nlohmann_json::nlohmann_json
                      GTest::gtest_main)
# The dashboard test reads the JSON from the source tree, not a copy.
target_compile_definitions(test_monitoring PRIVATE DIFFTRAIN_DASHBOARD_JSON="${CMAKE_CURRENT_LIST_DIR}/../monitoring/grafana-dashboard.json")
gtest_discover_tests(test_monitoring)

# Real Prometheus + Pushgateway servers (skipped when not installed) watching short
# training and sampling jobs: labels, stalls, final states, restarts, the dashboard.
difftrain_python_tests(monitoring_server monitoring_server_tests.py 300 LiveJob FinalStates Restart)
