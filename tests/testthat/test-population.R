# vb_population(): recovery of a known sparse coupling, each neuron's fit
# against a direct vb() fit of the same design, and bad input.

pop_case <- function() {
  B <- raised_cosine_basis(3, c(0.005, 0.03), 0.01, 0.005)
  N <- 5
  A <- matrix(0, N, N)
  A[2, 1] <- 1; A[4, 3] <- -1; A[1, 5] <- 0.9; A[5, 2] <- -0.9
  W <- lapply(1:N, function(i) lapply(1:N, function(j)
    if (i == j) c(-2, -0.5, 0) else A[i, j] * c(0.6, 0.8, 0.3)))
  list(B = B, A = A, Y = sim_population(20000, B, W, rep(log(25), N), 0.005, 11))
}

test_that("true couplings are recovered and absent ones pruned", {
  pc <- pop_case()
  pop <- vb_population(pc$Y, basis = pc$B)
  off <- row(pc$A) != col(pc$A)
  truth <- (pc$A != 0)[off]
  z <- abs(pop$gain / pop$gain_sd)[off]
  auc <- (mean(rank(z)[truth]) - (sum(truth) + 1) / 2) / sum(!truth)
  expect_gt(auc, 0.95)
  credible <- (pop$lower > 0 | pop$upper < 0)[off]
  expect_true(all(credible[truth]))
  expect_lte(sum(credible[!truth]), 2L)
  # signs of the true gains
  expect_equal(sign(pop$gain[pc$A != 0]), sign(pc$A[pc$A != 0]))
  # pruning: absent filters get far larger precisions than present ones
  expect_gt(median(pop$E_alpha[off][!truth]), 10 * max(pop$E_alpha[off][truth]))
  expect_true(all(pop$units$converged))
  expect_equal(pop$elbo, sum(pop$units$elbo))
  # one neuron's fit is the direct fit of its design with the same ARD groups
  H <- do.call(cbind, lapply(1:5, function(j) {
    h <- spike_history(pc$Y[, j], pc$B)
    colnames(h) <- paste0("n", j, ".h", 1:3)
    h
  }))
  X <- cbind("(Intercept)" = 1, H)
  ref <- vb_fit(X, pc$Y[, 3], family = poisson(), exposure = 0.005, prior_intercept = normal(0, 10),
                prior = ard(groups = rep(paste0("n", 1:5), each = 3)))
  expect_equal(pop$units$elbo[3], elbo(ref), tolerance = 1e-10)
  w <- colSums(pc$B)
  expect_equal(pop$gain[3, 4], sum(w * coef(ref)[paste0("n4.h", 1:3)]), tolerance = 1e-10)
  pdf(NULL)
  on.exit(dev.off())
  expect_equal(plot(pop)$gain, pop$gain)
  fl <- plot(pop, "filters", neuron = "n2")
  expect_equal(nrow(fl), 5 * nrow(pc$B))
})

test_that("vb_population() refuses what it cannot fit", {
  B <- raised_cosine_basis(2, c(0.005, 0.02), 0.01, 0.005)
  Y <- matrix(rpois(300, 0.2), 100, 3)
  expect_error(vb_population(Y[, 1, drop = FALSE], basis = B), "at least two neurons")
  expect_error(vb_population(Y - 1, basis = B), "non-negative whole numbers")
  expect_error(vb_population(replace(Y, 5, NA), basis = B), "non-negative whole numbers")
  expect_error(vb_population(Y, basis = "b"), "'basis'")
  expect_error(vb_population(Y, basis = unclass(B)[, 1:2], binwidth = NULL), "binwidth")
  expect_error(vb_population(Y, basis = B, covariates = 1:3), "one row per bin")
  expect_error(vb_population(Y, basis = B, prior = normal(0, 1)), "ard")
})
