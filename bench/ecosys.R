# Benchmark of the ecosystem path a user takes to compare models by
# leave-one-out cross-validation: fit + loo(), vbayes (CAVI + PSIS with the
# approximate-posterior correction) against rstanarm (NUTS, 2 chains x 1000
# iterations, + loo()).  Logistic regression, n = 1000 and 4000, p = 6
# simulated; both with the same normal(0, 2.5) priors (no autoscaling).
# Reports wall time and elpd_loo (SE) of each; bounded to a few minutes.
#   R_LIBS=.lib Rscript bench/ecosys.R
suppressPackageStartupMessages(library(vbayes))
has_stan <- requireNamespace("rstanarm", quietly = TRUE)
set.seed(2026)
rows <- list()
for (n in c(1000L, 4000L)) {
  X <- matrix(rnorm(n * 6), n, 6, dimnames = list(NULL, paste0("x", 1:6)))
  beta <- c(-0.5, 1, -0.7, 0.4, 0, 0, 0.2)
  d <- data.frame(X, y = rbinom(n, 1, plogis(drop(cbind(1, X) %*% beta))))
  f <- y ~ x1 + x2 + x3 + x4 + x5 + x6
  t_vb <- system.time({
    fit <- vb(f, data = d, family = binomial(), prior = normal(0, 2.5), prior_intercept = normal(0, 2.5))
    l <- suppressWarnings(loo(fit, draws = 4000))
  })[["elapsed"]]
  rows[[length(rows) + 1L]] <- data.frame(n = n, method = "vbayes vb() + loo()", seconds = t_vb,
    elpd_loo = l$estimates["elpd_loo", 1], se = l$estimates["elpd_loo", 2],
    max_pareto_k = max(l$diagnostics$pareto_k))
  if (has_stan) {
    t_st <- system.time({
      sf <- rstanarm::stan_glm(f, data = d, family = binomial(),
                               prior = rstanarm::normal(0, 2.5, autoscale = FALSE),
                               prior_intercept = rstanarm::normal(0, 2.5, autoscale = FALSE),
                               chains = 2, iter = 1000, refresh = 0, seed = 1)
      ls <- suppressWarnings(rstanarm::loo(sf))
    })[["elapsed"]]
    rows[[length(rows) + 1L]] <- data.frame(n = n, method = "rstanarm stan_glm() + loo()", seconds = t_st,
      elpd_loo = ls$estimates["elpd_loo", 1], se = ls$estimates["elpd_loo", 2],
      max_pareto_k = max(ls$diagnostics$pareto_k))
  }
}
res <- do.call(rbind, rows)
cat(sprintf("Machine: %s, nproc %s, load average %s; %s\n\n", R.version$platform,
            trimws(system("nproc", intern = TRUE)),
            sub(".*load average: ", "", system("uptime", intern = TRUE)), format(Sys.time(), tz = "UTC", usetz = TRUE)))
cat("| n | method | seconds | elpd_loo | SE | max Pareto k |\n|---|---|---|---|---|---|\n")
for (i in seq_len(nrow(res)))
  with(res[i, ], cat(sprintf("| %d | %s | %.2f | %.2f | %.2f | %.2f |\n", n, method, seconds, elpd_loo, se, max_pareto_k)))
