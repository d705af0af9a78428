# vb_lds(approx = "block"): the family between meanfield and the full chain.
# References: the two ends (runs of length 1 and T), a dense brute-force
# optimum of the same family's ELBO written here from the model, and the KL
# to the exact posterior (a dense Gaussian solve) in closed form.

lds_block_case <- function(T = 30, seed = 3) {
  set.seed(seed)
  z <- as.numeric(stats::arima.sim(list(ar = 0.9), T))
  list(Y = outer(z, c(1, -0.5, 0.8)) + matrix(rnorm(3 * T, sd = 0.5), T),
       Yc = matrix(rpois(3 * T, exp(0.2 + outer(z, c(0.3, -0.2, 0.25)))), T),
       p = list(A = matrix(0.9), Q = matrix(0.19), C = matrix(c(1, -0.5, 0.8)), d = c(0.1, 0, -0.1),
                R = c(0.25, 0.3, 0.2), m0 = 0, V0 = matrix(1)))
}
ctl <- vb_control(tol = 1e-13, maxit = 10000, quiet = TRUE)
fit_lds <- function(Y, p, approx, blocks = NULL, family = gaussian())
  vb_lds(Y, 1, family = family, params = p, learn = FALSE, approx = approx, blocks = blocks, control = ctl)

test_that("runs of length T are the structured family and runs of length 1 meanfield", {
  cs <- lds_block_case()
  for (fam in list(gaussian(), poisson())) {
    Y <- if (fam$family == "gaussian") cs$Y else cs$Yc
    s <- fit_lds(Y, cs$p, "structured", family = fam)
    m <- fit_lds(Y, cs$p, "meanfield", family = fam)
    bT <- fit_lds(Y, cs$p, "block", nrow(Y), family = fam)
    b1 <- fit_lds(Y, cs$p, "block", 1, family = fam)
    expect_equal(bT$elbo, s$elbo, tolerance = 1e-8 / abs(s$elbo))
    expect_equal(b1$elbo, m$elbo, tolerance = 1e-8 / abs(m$elbo))
    expect_equal(bT$posterior[[1]]$mean, s$posterior[[1]]$mean, tolerance = 1e-6)
    # the fidelity / tractability order: meanfield <= runs of 2 <= runs of 5 <= structured
    b2 <- fit_lds(Y, cs$p, "block", 2, family = fam)
    b5 <- fit_lds(Y, cs$p, "block", 5, family = fam)
    expect_true(m$elbo <= b2$elbo + 1e-9 && b2$elbo <= b5$elbo + 1e-9 && b5$elbo <= s$elbo + 1e-9)
    expect_true(all(diff(b5$elbo_trace) >= -1e-9 * abs(b5$elbo)))
  }
})

# ELBO of q(z1, z2) q(z3) q(z4) for the 1-d gaussian LDS, from the model
block_elbo_direct <- function(par, y, p) {
  m <- par[1:4]
  L <- matrix(c(exp(par[5]), par[6], 0, exp(par[7])), 2)
  S12 <- tcrossprod(L)
  S <- c(S12[1, 1], S12[2, 2], exp(2 * par[8]), exp(2 * par[9]))
  cv <- c(0, S12[2, 1], 0, 0) # Cov(z_t, z_{t-1})
  A <- p$A[1]; Q <- p$Q[1]; C <- drop(p$C)
  ll <- 0
  for (t in 1:4) ll <- ll + sum(-0.5 * log(2 * pi * p$R) - ((y[t, ] - C * m[t] - p$d)^2 + C^2 * S[t]) / (2 * p$R))
  lp <- -0.5 * log(2 * pi * p$V0[1]) - ((m[1] - p$m0)^2 + S[1]) / (2 * p$V0[1])
  for (t in 2:4) lp <- lp - 0.5 * log(2 * pi * Q) -
    ((m[t] - A * m[t - 1])^2 + S[t] + A^2 * S[t - 1] - 2 * A * cv[t]) / (2 * Q)
  ent <- 0.5 * (log(det(2 * pi * exp(1) * S12)) + log(2 * pi * exp(1) * S[3]) + log(2 * pi * exp(1) * S[4]))
  ll + lp + ent
}

test_that("the q12 family reaches the dense brute-force optimum of its ELBO", {
  cs <- lds_block_case(4, 5)
  f <- fit_lds(cs$Y, cs$p, "block", list(1:2, 3, 4))
  opt <- optim(c(rep(0, 4), log(0.5), 0, log(0.5), log(0.5), log(0.5)),
               function(par) -block_elbo_direct(par, cs$Y, cs$p), method = "BFGS",
               control = list(reltol = 1e-14, maxit = 5000))
  expect_equal(f$elbo, -opt$value, tolerance = 1e-7)
  expect_equal(drop(f$posterior[[1]]$mean), opt$par[1:4], tolerance = 1e-4)
  s <- fit_lds(cs$Y, cs$p, "structured")
  m <- fit_lds(cs$Y, cs$p, "meanfield")
  expect_lt(m$elbo, f$elbo)
  expect_lt(f$elbo, s$elbo)
})

test_that("log p(y) - ELBO is the closed-form KL from the block q to the exact posterior", {
  cs <- lds_block_case(12, 6)
  p <- cs$p; T <- 12
  # exact posterior of the gaussian LDS: a dense Gaussian in information form
  Lam <- matrix(0, T, T); b <- numeric(T)
  Lam[1, 1] <- 1 / p$V0[1]; b[1] <- p$m0 / p$V0[1]
  for (t in 2:T) {
    Lam[t, t] <- Lam[t, t] + 1 / p$Q[1]
    Lam[t - 1, t - 1] <- Lam[t - 1, t - 1] + p$A[1]^2 / p$Q[1]
    Lam[t, t - 1] <- Lam[t - 1, t] <- -p$A[1] / p$Q[1]
  }
  C <- drop(p$C)
  diag(Lam) <- diag(Lam) + sum(C^2 / p$R)
  b <- b + drop(sweep(cs$Y, 2, p$d) %*% (C / p$R))
  Sp <- solve(Lam); mp <- drop(Sp %*% b)
  # log p(y): the marginal MVN of the stacked observations
  G <- kronecker(diag(T), matrix(C))
  Sz <- solve(Lam - diag(sum(C^2 / p$R), T))
  mz <- drop(Sz %*% replace(numeric(T), 1, p$m0 / p$V0[1]))
  Sy <- G %*% Sz %*% t(G) + diag(rep(p$R, T))
  r <- as.vector(t(cs$Y)) - drop(G %*% mz) - rep(p$d, T)
  logpy <- -0.5 * (3 * T * log(2 * pi) + determinant(Sy)$modulus + sum(r * solve(Sy, r)))
  for (blk in list(3, list(1:2, 3:7, 8:12), 1)) {
    f <- fit_lds(cs$Y, p, "block", blk)
    po <- f$posterior[[1]]
    # q's dense covariance from its precision (block-tridiagonal, zero across runs)
    Lq <- diag(po$D[1, 1, ])
    for (t in 2:T) Lq[t, t - 1] <- Lq[t - 1, t] <- po$L[1, 1, t]
    Sq <- solve(Lq)
    expect_equal(diag(Sq), po$cov[1, 1, ], tolerance = 1e-8)
    expect_equal(Sq[cbind(2:T, 1:(T - 1))], po$cross[1, 1, 2:T], tolerance = 1e-8)
    mq <- drop(po$mean)
    kl <- 0.5 * (sum(Lam * Sq) + sum((mp - mq) * (Lam %*% (mp - mq))) - T +
                   determinant(Sp)$modulus - determinant(Sq)$modulus)
    expect_equal(as.numeric(logpy) - f$elbo, as.numeric(kl), tolerance = 1e-7)
  }
  expect_equal(fit_lds(cs$Y, p, "structured")$elbo, as.numeric(logpy), tolerance = 1e-9)
})

test_that("blocks are checked, learning works, and draws respect the runs", {
  cs <- lds_block_case(20, 7)
  expect_error(vb_lds(cs$Y, 1, approx = "block"), "needs 'blocks'")
  expect_error(vb_lds(cs$Y, 1, approx = "block", blocks = 0), "run length")
  expect_error(vb_lds(cs$Y, 1, approx = "block", blocks = list(1:3, 5:20)), "partition")
  expect_error(vb_lds(cs$Y, 1, approx = "block", blocks = list(2:1, 3:20)), "partition")
  expect_error(vb_lds(cs$Y, 1, blocks = 2), "for approx")
  f <- vb_lds(cs$Y, 1, approx = "block", blocks = 4, control = vb_control(quiet = TRUE, maxit = 3000, tol = 1e-6))
  expect_true(f$converged)
  expect_true(all(diff(f$elbo_trace) >= -1e-8 * abs(f$elbo)))
  s <- vb_lds(cs$Y, 1, control = vb_control(quiet = TRUE, maxit = 3000, tol = 1e-6))
  expect_lt(f$elbo, s$elbo + 1e-6)
  # draws from q: sample covariances within a run, none across runs
  set.seed(1)
  fb <- fit_lds(cs$Y, cs$p, "block", 4)
  th <- vbayes:::q_sample(fb, 20000)$theta
  po <- fb$posterior[[1]]
  expect_equal(cov(th[2, ], th[1, ]), po$cross[1, 1, 2], tolerance = 0.05)
  expect_lt(abs(cor(th[5, ], th[4, ])), 0.03) # steps 4 and 5 are in different runs
  pr <- predict(fb, newdata = cs$Y[1:12, ])
  expect_equal(NROW(pr), 12L)
})
