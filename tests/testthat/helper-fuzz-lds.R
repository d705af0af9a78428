# Fuzz cases of the vb_lds() meanfield E-step (joint steps and plain sweeps),
# on the fixture data Y (60 x 3 gaussian) and Ycnt (60 x 3 counts).
mf_ok <- function(v, w) {
  ok <- fz_finite(v[c("elbo", "elbo_trace")])
  if (!isTRUE(ok)) return(ok)
  if (any(diff(v$elbo_trace) < -1e-10 * (1 + abs(v$elbo)))) return("the meanfield ELBO trace decreased")
  TRUE
}
fuzz_topic_lds <- list(
  cases = function() list(lds_meanfield = list(
    fz_ok(vb_lds(Ycnt, 1, family = poisson(), approx = "meanfield", learn = FALSE,
                 params = list(A = matrix(0.9), Q = matrix(0.2), C = matrix(c(0.3, -0.2, 0.25), 3),
                               d = rep(0.2, 3), m0 = 0, V0 = matrix(1)),
                 control = vb_control(maxit = 50, quiet = TRUE)), check = mf_ok),
    fz_ok(vb_lds(replace(Ycnt, c(2, 70, 150), NA), 1, family = poisson(), approx = "meanfield",
                 learn = FALSE, exposure = seq(0.5, 2, length.out = 60),
                 params = list(A = matrix(0.9), Q = matrix(0.2), C = matrix(c(0.3, -0.2, 0.25), 3),
                               d = rep(0.2, 3), m0 = 0, V0 = matrix(1)),
                 control = vb_control(maxit = 50, quiet = TRUE, joint_means = 0)), check = mf_ok),
    fz_ok(vb_lds(Y, 2, approx = "meanfield", control = vb_control(maxit = 10, quiet = TRUE)),
          check = mf_ok),
    fz_err(vb_lds(Y, 1, approx = "meanfield", control = vb_control(joint_means = -1))),
    fz_err(vb_lds(Y, 1, approx = "meanfield", control = list(joint_means = NA)))
  )),
  workload = alist(
    vb_lds(Ycnt[1:20, ], 1, family = poisson(), approx = "meanfield",
           control = vb_control(maxit = 2, quiet = TRUE)),
    vb_lds(Y[1:20, ], 1, approx = "meanfield", control = vb_control(maxit = 2, quiet = TRUE, joint_means = 0))))
