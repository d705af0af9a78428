# Issue 10 regression check: vb_fit() on simulated GLMs, one library at a time
# (Rscript bench/engine_check.R <lib>), to compare an older build with this one.
# Median of 3 elapsed seconds; the ELBO shows both builds reach the same optimum.
lib <- commandArgs(TRUE)[1]
suppressMessages(library(vbayes, lib.loc = lib))
set.seed(1)
res <- list()
for (cfg in list(c("binomial", 2e5, 30), c("poisson", 2e5, 30), c("gaussian", 2e5, 30), c("binomial", 5e4, 100))) {
  fam <- cfg[1]; n <- as.numeric(cfg[2]); p <- as.numeric(cfg[3])
  X <- cbind("(Intercept)" = 1, matrix(rnorm(n * (p - 1)), n, dimnames = list(NULL, paste0("x", 1:(p-1)))))
  b <- rnorm(p, 0, 0.1)
  y <- switch(fam, binomial = rbinom(n, 1, plogis(X %*% b)), poisson = rpois(n, exp(X %*% b)), gaussian = drop(X %*% b) + rnorm(n))
  for (a in c("fullrank", "meanfield")) {
    f <- NULL; t <- replicate(3, system.time(f <<- vb_fit(X, y, family = get(fam)(), approx = a, control = vb_control(quiet = TRUE)))[["elapsed"]])
    cat(sprintf("%s n=%g p=%g %s: %.2f s  iter %d elbo %.4f\n", fam, n, p, a, median(t), f$iterations, f$elbo))
  }
}
