/*
 * kvm_userfault.c - probe: does this host's KVM have "KVM Userfault" (user-
 * fault memslots), with which KVM_RUN itself would exit with
 * KVM_EXIT_MEMORY_FAULT and the faulting guest-physical address when the
 * guest touches a page userspace marked in a per-memslot bitmap? That would
 * replace the discard-fault path's handler thread and signal (the userfaultfd
 * event, the kick, KVM_RUN returning EINTR) with one exit on the vCPU thread.
 *
 * The series (James Houghton, not merged upstream as far as the uapi headers
 * of 2025 show; docs/probes/kvm_userfault.md has the history):
 *   - memslot flag KVM_MEM_USERFAULT = 1 << 3, set with
 *     KVM_SET_USER_MEMORY_REGION2, whose struct gains `__u64
 *     userfault_bitmap` (a user pointer, one bit per page of the slot) in
 *     the first word of what upstream calls pad2[14];
 *   - exit flag KVM_MEMORY_EXIT_FLAG_USERFAULT = 1 << 4 in
 *     run->memory_fault.flags, with KVM_EXIT_MEMORY_FAULT (39);
 *   - capability KVM_CAP_USERFAULT: 239 in v1 (2024-12) and v2 (2025-01),
 *     240 in the May 2025 rework, 243 in v3 (2025-06). Upstream has since
 *     given 239, 240 and 243 to ARM capabilities, so a number alone proves
 *     nothing: the flag is the test.
 *
 * What it does: prints uname -r and KVM_GET_API_VERSION; KVM_CHECK_EXTENSION
 * on /dev/kvm and on a VM for capabilities 230..250 (with the upstream name
 * of each and the series' candidates marked), KVM_CAP_MEMORY_FAULT_INFO (232)
 * among them; then, on a fresh VM with 2 MiB of anonymous memory, creates
 * slot 0 with KVM_SET_USER_MEMORY_REGION2 and no flag (the ioctl works at
 * all?), asks for KVM_MEM_USERFAULT on it (flags-only change) and on a new
 * slot 1 with a bitmap, and tries every other unknown flag bit 3..15 on
 * slot 1 (a renumbered flag would show up as an accepted bit). If bit 3 is
 * accepted, it marks page 3 of slot 0 in the bitmap and runs a three-
 * instruction real-mode guest that reads it, printing what KVM_RUN returns
 * (on a host that emulates guest kernel code, as the development machines
 * do, the read goes through KVM's emulator, which the series does not
 * intercept: a CPL3 guest would be the real test).
 *
 * Build and run (needs /dev/kvm, x86-64; no root beyond access to /dev/kvm):
 *   cc -O2 -Wall -o kvm_userfault docs/probes/kvm_userfault.c && ./kvm_userfault
 * It only creates throw-away VMs; it writes nothing outside its own memory.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <linux/kvm.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/utsname.h>
#include <unistd.h>

/* The distribution's headers may predate KVM_SET_USER_MEMORY_REGION2 (6.8). */
struct region2 {
	uint32_t slot;
	uint32_t flags;
	uint64_t guest_phys_addr;
	uint64_t memory_size;
	uint64_t userspace_addr;
	uint64_t guest_memfd_offset;
	uint32_t guest_memfd;
	uint32_t pad1;
	uint64_t userfault_bitmap; /* the series' field; pad2[0] upstream */
	uint64_t pad2[13];
};
_Static_assert(sizeof(struct region2) == 160, "kvm_userspace_memory_region2 is 160 bytes");

#define SET_REGION2 _IOW(KVMIO, 0x49, struct region2)
#define MEM_USERFAULT (1u << 3)
#define MEMORY_EXIT_FLAG_USERFAULT (1ull << 4)
#define EXIT_MEMORY_FAULT 39
#define CAP_USER_MEMORY2 231
#define CAP_MEMORY_FAULT_INFO 232
#define SLOT_SIZE (2ul << 20)
#define PAGE 4096ul

/* Upstream names of the capability numbers around the series' candidates. */
static const char *const cap_names[] = {
	[230] = "ARM_SUPPORTED_REG_MASK_RANGES",
	[231] = "USER_MEMORY2",
	[232] = "MEMORY_FAULT_INFO",
	[233] = "MEMORY_ATTRIBUTES",
	[234] = "GUEST_MEMFD",
	[235] = "VM_TYPES",
	[236] = "PRE_FAULT_MEMORY",
	[237] = "X86_APIC_BUS_CYCLES_NS",
	[238] = "X86_GUEST_MODE",
	[239] = "ARM_WRITABLE_IMP_ID_REGS (USERFAULT in v1/v2)",
	[240] = "ARM_EL2 (USERFAULT in the May 2025 rework)",
	[241] = "ARM_EL2_E2H0",
	[242] = "RISCV_MP_STATE_RESET",
	[243] = "ARM_CACHEABLE_PFNMAP_SUPPORTED (USERFAULT in v3)",
	[244] = "GUEST_MEMFD_FLAGS",
	[245] = "ARM_SEA_TO_USER",
	[246] = "S390_USER_OPEREXEC",
};

static int check(int fd, int cap)
{
	return ioctl(fd, KVM_CHECK_EXTENSION, cap);
}

/* ioctl result as text: "ok" or the errno's name. */
static const char *outcome(int r)
{
	return r < 0 ? strerrorname_np(errno) : "ok";
}

static int set_region(int vm, uint32_t slot, uint32_t flags, uint64_t gpa, void *host,
		      uint64_t *bitmap)
{
	struct region2 r;
	memset(&r, 0, sizeof r);
	r.slot = slot;
	r.flags = flags;
	r.guest_phys_addr = gpa;
	r.memory_size = SLOT_SIZE;
	r.userspace_addr = (uint64_t)(uintptr_t)host;
	r.userfault_bitmap = (uint64_t)(uintptr_t)bitmap;
	return ioctl(vm, SET_REGION2, &r);
}

/* A slot of size 0 is deleted. */
static void delete_slot(int vm, uint32_t slot)
{
	struct region2 r;
	memset(&r, 0, sizeof r);
	r.slot = slot;
	if (ioctl(vm, SET_REGION2, &r) < 0)
		printf("  (slot %u could not be deleted: %s)\n", slot, strerrorname_np(errno));
}

static void *guest_memory(void)
{
	void *m = mmap(NULL, SLOT_SIZE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (m == MAP_FAILED) {
		perror("mmap");
		exit(2);
	}
	return m;
}

/* Page 3 of slot 0 is marked; a real-mode guest at 0 reads it. */
static void run_guest(int kvm, int vm, uint8_t *mem, uint64_t *bitmap)
{
	static const uint8_t code[] = {
		0xa1, 0x00, 0x30, /* mov ax, [0x3000] */
		0xe6, 0x10, /* out 0x10, al */
		0xf4, /* hlt */
	};
	memcpy(mem, code, sizeof code);
	bitmap[0] |= 1ull << 3;
	int cpu = ioctl(vm, KVM_CREATE_VCPU, 0);
	int size = ioctl(kvm, KVM_GET_VCPU_MMAP_SIZE, 0);
	if (cpu < 0 || size <= 0) {
		printf("  vCPU: %s\n", strerrorname_np(errno));
		return;
	}
	struct kvm_run *run = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_SHARED, cpu, 0);
	struct kvm_sregs s;
	struct kvm_regs r;
	if (run == MAP_FAILED || ioctl(cpu, KVM_GET_SREGS, &s) < 0) {
		printf("  vCPU setup: %s\n", strerrorname_np(errno));
		return;
	}
	s.cs.base = 0;
	s.cs.selector = 0;
	s.ds.base = 0;
	s.ds.selector = 0;
	memset(&r, 0, sizeof r);
	r.rip = 0;
	r.rflags = 2;
	if (ioctl(cpu, KVM_SET_SREGS, &s) < 0 || ioctl(cpu, KVM_SET_REGS, &r) < 0) {
		printf("  vCPU registers: %s\n", strerrorname_np(errno));
		return;
	}
	for (int i = 0; i < 3; i++) {
		run->exit_reason = 0xffffffffu;
		int ret = ioctl(cpu, KVM_RUN, 0);
		int err = errno;
		printf("  KVM_RUN %d: returned %d (%s), exit_reason %u", i, ret,
		       ret < 0 ? strerrorname_np(err) : "-", run->exit_reason);
		if (run->exit_reason == EXIT_MEMORY_FAULT) {
			/* memory_fault {flags, gpa, size} opens the exit union,
			 * which older headers do not name. */
			const uint64_t *mf = (const uint64_t *)&run->hw;
			printf(", memory_fault flags %#llx gpa %#llx size %#llx%s",
			       (unsigned long long)mf[0], (unsigned long long)mf[1],
			       (unsigned long long)mf[2],
			       mf[0] & MEMORY_EXIT_FLAG_USERFAULT ? " (USERFAULT)" : "");
		}
		printf("\n");
		if (run->exit_reason == EXIT_MEMORY_FAULT) {
			bitmap[0] &= ~(1ull << 3); /* resolved: let the read complete */
			continue;
		}
		if (ret < 0 || run->exit_reason == KVM_EXIT_HLT)
			break;
	}
}

int main(void)
{
	struct utsname u;
	if (uname(&u) == 0)
		printf("kernel: %s %s %s\n", u.sysname, u.release, u.machine);
	int kvm = open("/dev/kvm", O_RDWR | O_CLOEXEC);
	if (kvm < 0) {
		perror("/dev/kvm");
		return 2;
	}
	printf("KVM_GET_API_VERSION: %d\n", ioctl(kvm, KVM_GET_API_VERSION, 0));
	int vm = ioctl(kvm, KVM_CREATE_VM, 0);
	if (vm < 0) {
		perror("KVM_CREATE_VM");
		return 2;
	}
	printf("KVM_CHECK_EXTENSION (/dev/kvm, VM):\n");
	for (int cap = 230; cap <= 250; cap++) {
		const char *name = cap < (int)(sizeof cap_names / sizeof cap_names[0]) ? cap_names[cap] : NULL;
		printf("  %3d %-50s %d %d\n", cap, name ? name : "(none upstream)", check(kvm, cap),
		       check(vm, cap));
	}

	uint8_t *mem0 = guest_memory(), *mem1 = guest_memory();
	/* One bit per page, in longs; all clear (nothing marked yet). */
	uint64_t *bitmap = calloc(SLOT_SIZE / PAGE / 64 + 1, sizeof(uint64_t));
	if (!bitmap)
		return 2;
	int r = set_region(vm, 0, 0, 0, mem0, NULL);
	printf("KVM_SET_USER_MEMORY_REGION2 slot 0, no flag: %s\n", outcome(r));
	if (r < 0) {
		printf("verdict: no KVM_SET_USER_MEMORY_REGION2, so no KVM Userfault\n");
		return 0;
	}
	int on_slot0 = set_region(vm, 0, MEM_USERFAULT, 0, mem0, bitmap);
	printf("  slot 0 flags-only change to KVM_MEM_USERFAULT (1<<3): %s\n", outcome(on_slot0));
	int on_slot1 = set_region(vm, 1, MEM_USERFAULT, SLOT_SIZE, mem1, bitmap);
	printf("  new slot 1 with KVM_MEM_USERFAULT (1<<3) and a bitmap: %s\n", outcome(on_slot1));
	if (on_slot1 == 0)
		delete_slot(vm, 1);
	int accepted = 0;
	for (int bit = 4; bit < 16; bit++) {
		int rr = set_region(vm, 1, 1u << bit, SLOT_SIZE, mem1, bitmap);
		if (rr == 0) {
			accepted++;
			printf("  new slot 1 with unknown flag 1<<%d: accepted\n", bit);
			delete_slot(vm, 1);
		} else if (errno != EINVAL) {
			printf("  new slot 1 with unknown flag 1<<%d: %s\n", bit, strerrorname_np(errno));
		}
	}
	if (!accepted)
		printf("  flags 1<<4 .. 1<<15 on a new slot: all EINVAL\n");
	if (on_slot0 == 0 || on_slot1 == 0) {
		printf("KVM_MEM_USERFAULT accepted: running a guest that reads a marked page\n");
		if (on_slot0 != 0)
			printf("  (slot 0 has no userfault flag: the run shows nothing)\n");
		run_guest(kvm, vm, mem0, bitmap);
		printf("verdict: KVM Userfault present\n");
	} else {
		printf("verdict: KVM Userfault absent (KVM_MEM_USERFAULT refused); "
		       "KVM_CAP_MEMORY_FAULT_INFO = %d\n",
		       check(vm, CAP_MEMORY_FAULT_INFO));
	}
	return 0;
}
