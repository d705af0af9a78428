## vbayes main demo: one neuron's spike counts in 5 ms bins.
## Does the stimulus drive the neuron?  Fit two variational Poisson GLMs,
## read their posteriors and compare them by the evidence lower bound.
library(vbayes)
data(neuron, package = "vbayes")
truth <- attr(neuron, "truth")
cat(sprintf("%d bins of %g s, %d spikes (%.1f Hz)\n", nrow(neuron), truth$binwidth,
            sum(neuron$spikes), sum(neuron$spikes) / (nrow(neuron) * truth$binwidth)))

## Rate model: spikes ~ Poisson(binwidth * exp(b0 + b1 * stim))
base <- vb(spikes ~ 1, data = neuron, family = poisson(), exposure = 0.005)
stim <- vb(spikes ~ stim, data = neuron, family = poisson(), exposure = 0.005,
           prior = normal(0, 1), prior_intercept = normal(0, 10))
summary(base)
summary(stim)

## The two bounds side by side: ELBO = E[log-lik] - KL(q || prior)
print(compare_models(baseline = base, stimulus = stim))

## The neuron is also refractory: add a post-spike filter over the last 10 bins
## (lag 1 onwards, reset at trial boundaries) and let the ELBO judge it
hist <- vb(spikes ~ stim + spike_history(spikes, diag(10), trial = trial), data = neuron,
           family = poisson(), exposure = 0.005)
print(compare_models(stimulus = stim, history = hist))
cat(sprintf("Stimulus gain with the history term: %.3f (truth %.1f)\n",
            coef(hist)[["stim"]], truth$stim_gain))
flt <- filters(hist)[[1]]
print(round(cbind(flt[, c("lag", "estimate", "lower", "upper")], truth = truth$history_filter), 2))

## A plot of the fitted rate against the binned data, written to a file
outdir <- Sys.getenv("VBAYES_DEMO_DIR", tempdir())
dir.create(outdir, showWarnings = FALSE, recursive = TRUE)
png_file <- file.path(outdir, "neuron-rate.png")
grDevices::png(png_file, width = 900, height = 900)
op <- par(mfrow = c(3, 1), mar = c(4.5, 4.5, 2.5, 1), cex = 0.9)
idx <- neuron$trial == 1 & neuron$time < 4
tt <- neuron$time[idx]
rate <- predict(stim, neuron[idx, ], type = "response", interval = "credible") / 0.005
smooth <- stats::filter(neuron$spikes[idx], rep(1 / 20, 20), sides = 2) / 0.005
band <- grDevices::adjustcolor("steelblue", 0.55)
plot(tt, smooth, type = "l", col = "grey50", xlab = "time (s)", ylab = "rate (Hz)",
     ylim = range(0, smooth, rate[, "upr"], na.rm = TRUE),
     main = "Trial 1: smoothed counts (grey) and the VB rate (blue, 95% band shaded)")
polygon(c(tt, rev(tt)), c(rate[, "lwr"], rev(rate[, "upr"])), col = band, border = NA)
lines(tt, rate[, "fit"], col = "navy", lwd = 1)
## one second, close up: the band is 10-30% of the rate wide
z <- tt >= 1 & tt < 2
plot(tt[z], rate[z, "fit"], type = "n", xlab = "time (s)", ylab = "rate (Hz)",
     ylim = range(0, rate[z, c("lwr", "upr")]),
     main = sprintf("1-2 s close up: mean rate and 95%% band (median width %.0f%% of the rate); ticks: spikes",
                    100 * stats::median((rate[, "upr"] - rate[, "lwr"]) / rate[, "fit"])))
polygon(c(tt[z], rev(tt[z])), c(rate[z, "lwr"], rev(rate[z, "upr"])), col = band, border = "steelblue4")
lines(tt[z], rate[z, "fit"], col = "navy", lwd = 1.5)
rug(tt[z][neuron$spikes[idx][z] > 0], ticksize = 0.04, col = "grey20")
plot(stim, which = "elbo")
par(op)
grDevices::dev.off()
cat("Plot written to", png_file, "\n")
